"""LeadSquared Service CRM: tickets created and updated through the tenants API, fields wrapped in its
envelope; a customer's follow-up as a portal activity or an internal note. Every call after the create takes
the ticket's numeric `Id` (e.g. "143"), which the create returns as the ticket id (its `Key`, "#143", as the
ticket key, its UUID `TicketId` as the ticket uuid: follow-ups see `ticket.id`, `ticket.key` and `ticket.uuid`).
Facts and sources: docs/vendors.md."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import msgspec

from bridge.config import DestinationConfig, RateLimit
from bridge.errors import VALUE, MappingError
from bridge.vendors.base import (
    Adapter,
    AnswerId,
    Diagnosis,
    Fetch,
    Outcome,
    VendorRequest,
    answer_id,
    blank,
    classify_status,
    decode_json,
    excerpt,
    first_id,
    lower_keys,
    parse_retry_after,
    succeeded,
    text_or_none,
    ticket_id_from,
    unreadable_success,
)
from bridge.vendors.files import FileSet, Part, file_parts, multipart_body, read_files, split_files
from bridge.yamlfile import KeyPath, KeyValueError, Quoted, did_you_mean

SANDBOX_ORG = "sandbox-org"
SANDBOX_ACCESS_KEY = "sandbox-access-key"
SANDBOX_SECRET_KEY = "sandbox-secret-key"  # noqa: S105 - the built-in simulator's demo key, not a secret
# LeadSquared's documented limit ("API calls exceeded the limit of 25 in 5 second(s)").
DEFAULT_REQUESTS, DEFAULT_PER_SECONDS = 25, 5.0
# `rate_limit: leadsquared-<plan>`: calls per 5 s by plan, from the older table of LeadSquared's rate-limits page
# (shared per account). Its newer version raises Pro to 10 and Super to 20; the lower figures are kept, as a
# limit set too low costs speed while one set too high costs 429s; write {requests, per_seconds} to differ.
RATE_PRESETS = {f"leadsquared-{plan}": RateLimit(requests=n, per_seconds=DEFAULT_PER_SECONDS) for plan, n in (
    ("lite", 2), ("pro", 5), ("super", 10), ("basic", 10), ("standard", 15), ("enterprise", 25))}
DEFAULT_PRESET = "leadsquared-enterprise"  # the Service CRM pages' 429 names 25 in 5 s
# Only the Service CRM gateway (`apigw.service-in.leadsquared.com`, …) serves tickets; a core API host
# (`api-in21.leadsquared.com`, …) answers their calls 401.
GATEWAY_HOST = re.compile(r"^apigw\.service-[a-z0-9-]*\.leadsquared\.com$", re.IGNORECASE)
CORE_HOST_HINT = ("this looks like the core API host; tickets need the Service CRM gateway host, and the Service "
                  "CRM API must be enabled in the account")
RATE_LIMIT_EXCEPTION = "mxapiratelimitexceededexception"
ENABLE_FIX = ("Switch the Service CRM API on: My Profile > Settings > Service Cloud > API Configurations > "
              "\"LeadSquared Service CRM APIs\", then Save")
GATEWAY_FIX = ("set base_url to the Service CRM gateway host (https://apigw.service-in.leadsquared.com in India; "
               "for other regions ask the account manager or scsupport@leadsquared.com), not the API host of "
               "Settings > API and Webhooks; and " + ENABLE_FIX[0].lower() + ENABLE_FIX[1:])
DOCTOR_TICKET = "0"  # no account has a ticket 0: its look-up answers "not found" once host, keys and API work
# The request must carry one of these; `LeadId` goes in the envelope, the others in `Fields`.
LEAD_FIELDS = ("LeadId", "LeadDetail.EmailAddress", "LeadDetail.Phone")
# Mapping `options:` that override the envelope.
ENVELOPE_OPTIONS = ("TypeId", "RelatedTicketTypeId")


ACTIONS = ("create_ticket", "update_ticket", "add_activity", "add_note", "delete_ticket")
# The field a follow-up may name the ticket's numeric Id with (else the follow-up's ticket gives it).
ID_FIELD = "Id"
# The text field each action needs.
TEXT_FIELD = {"add_activity": "Text", "add_note": "TextPart"}
DIRECTIONS = ("INBOUND", "OUTBOUND")
# Where the names of files that could not be sent go, unless the destination says otherwise.
NOTE_FIELD = "Description"


def tickets_path(org_id: str) -> str:
    return f"/api/tenants/{org_id}/tickets"


def update_path(org_id: str, ticket_id: str) -> str:
    return f"/api/tenants/{org_id}/tickets/{quote(ticket_id, safe='')}/update"


def activity_path(org_id: str, ticket_id: str) -> str:
    return f"/api/tenants/{org_id}/ticket/{quote(ticket_id, safe='')}/portal/activity"


def details_path(org_id: str, ticket_id: str) -> str:
    return f"/api/tenants/{org_id}/tickets/{quote(ticket_id, safe='')}"


def trash_path(org_id: str) -> str:
    return f"/api/tenants/{org_id}/tickets/trash"


def note_path(org_id: str) -> str:
    return f"/api/tenants/{org_id}/internalnote/upload"


def numeric_id(value: str) -> str:
    """The ticket's numeric Id (`143`; a `#143` Key is read as its number); MappingError otherwise."""
    text = value.strip().lstrip("#")
    if not text.isdigit():
        raise MappingError(f"{value!r} is not LeadSquared's numeric ticket Id (e.g. \"143\"): the update, note "
                           "and activity calls take the number, not the TicketId UUID", path=ID_FIELD)
    return str(int(text))


def deleted(data: Mapping[str, Any], status: int) -> Outcome:
    """The trash call's answer, `{"SuccessfulIds": [160], "FailedIds": []}`: it can partly succeed, and one
    Id is sent, so any failed Id is the failure."""
    failed, done = data.get("failedids"), data.get("successfulids")
    if isinstance(failed, list) and failed:
        return Outcome(classification="permanent",
                       error=f"leadsquared: HTTP {status}: the ticket was not deleted (FailedIds {failed}); "
                             "deleting takes an admin user's keys")
    if isinstance(done, list) and done:
        return succeeded(answer_id(done[0], "SuccessfulIds[0]"))
    return Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: nothing was deleted: {data}")


class LeadSquaredOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    # A preset name is read here and replaced by its RateLimit in __post_init__, so every reader of a
    # DestinationConfig sees a RateLimit or None, as the base class declares.
    rate_limit: RateLimit | str | None = None  # type: ignore[assignment]
    org_id: str = ""
    access_key: str = ""
    secret_key: str = ""
    type_id: str = "1"
    related_ticket_type_id: int = 1

    def secret_values(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in ("access_key", "secret_key") if getattr(self, key)}

    def credentials(self) -> dict[KeyPath, str]:
        """The account's org id (its tenant, in every path) and its keys."""
        return {(key,): getattr(self, key) for key in ("org_id", "access_key", "secret_key") if getattr(self, key)}

    def demo_credentials(self) -> dict[KeyPath, str]:
        return {("org_id",): SANDBOX_ORG, ("access_key",): SANDBOX_ACCESS_KEY, ("secret_key",): SANDBOX_SECRET_KEY}

    def header_texts(self) -> dict[KeyPath, str]:
        """The access and secret keys, each sent in a header of its own."""
        return {(key,): getattr(self, key) for key in ("access_key", "secret_key")}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sandbox:
            missing = [k for k in ("org_id", "access_key", "secret_key") if not getattr(self, k)]
            if missing:
                raise ValueError(f"{', '.join(f'`{k}`' for k in missing)} required: the org id and the "
                                 "access and secret keys from LeadSquared's API settings")
        if self.rate_limit is None:
            self.rate_limit = RATE_PRESETS[DEFAULT_PRESET]
        elif isinstance(self.rate_limit, str):
            preset = RATE_PRESETS.get(self.rate_limit.strip().lower())
            if preset is None:
                raise KeyValueError(("rate_limit",), f"unknown LeadSquared plan {VALUE}; write one of "
                                    f"{', '.join(RATE_PRESETS)} or {{requests: N, per_seconds: S}}{{near}}",
                                    self.rate_limit, quotes={"near": Quoted(("rate_limit",), self.rate_limit,
                                    quote=did_you_mean(self.rate_limit, RATE_PRESETS), hidden="")})
            self.rate_limit = preset


class LeadSquaredAdapter(Adapter):
    vendor: ClassVar[str] = "leadsquared"
    Options: ClassVar[type[DestinationConfig]] = LeadSquaredOptions
    actions: ClassVar[frozenset[str]] = frozenset(ACTIONS)

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        problems = [f"options.{key}: unknown LeadSquared option; known: {', '.join(ENVELOPE_OPTIONS)}"
                    for key in options if key not in ENVELOPE_OPTIONS]
        if action == "create_ticket" and not any(f in fields for f in LEAD_FIELDS):
            problems.append(f"fields: leadsquared create_ticket needs one of {', '.join(LEAD_FIELDS)}")
        if action in TEXT_FIELD and TEXT_FIELD[action] not in fields:
            problems.append(f"{TEXT_FIELD[action]}: leadsquared {action} needs a `{TEXT_FIELD[action]}` field")
        if action == "delete_ticket" and set(fields) - {ID_FIELD}:
            problems.append(f"fields: leadsquared delete_ticket takes only `{ID_FIELD}` (else the follow-up's "
                            f"ticket); not {', '.join(sorted(set(fields) - {ID_FIELD}))}")
        if action == "update_ticket" and not (set(fields) - {ID_FIELD, "LeadId", "files"}):
            problems.append("fields: leadsquared update_ticket needs at least one ticket field to change "
                            "(e.g. Status)")
        return problems

    @property
    def options(self) -> LeadSquaredOptions:
        assert isinstance(self.config, LeadSquaredOptions)
        return self.config

    def keys(self) -> tuple[str, str, str]:
        o = self.options
        if o.sandbox:  # always the simulator's demo account: a sandbox never sends configured keys
            return SANDBOX_ORG, SANDBOX_ACCESS_KEY, SANDBOX_SECRET_KEY
        return o.org_id, o.access_key, o.secret_key

    def envelope(self, fields: Mapping[str, Any], options: Mapping[str, Any], ticket_id: str | None = None
                 ) -> dict[str, Any]:
        """The ticket body: TypeId, Id, LeadId, Fields (in mapping order) and RelatedTicketTypeId."""
        if ticket_id is None and all(blank(fields.get(name)) for name in LEAD_FIELDS):
            raise MappingError(f"leadsquared needs one of {', '.join(LEAD_FIELDS)} with a value; "
                               "all are missing or empty", path="LeadDetail.EmailAddress")
        type_id = options.get("TypeId", self.options.type_id)
        related = options.get("RelatedTicketTypeId", self.options.related_ticket_type_id)
        lead_id = fields.get("LeadId")
        return {
            "TypeId": str(type_id),
            "Id": ticket_id,
            "LeadId": None if blank(lead_id) else lead_id,
            "Fields": [{"SchemaName": name, "Value": value} for name, value in fields.items()
                       if name not in ("LeadId", ID_FIELD)],
            "RelatedTicketTypeId": related,
        }

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Fetch) -> dict[str, Any]:
        """Read the `files` attachments (create and update send them) within the destination's caps."""
        if action in ("create_ticket", "update_ticket"):
            return await read_files(fields, self.attachments_dir, self.config.attachments)
        return fields

    @property
    def window_s(self) -> float:
        """The destination's rate window: how long a rate-limited call waits at least."""
        rate = self.options.rate_limit
        return rate.per_seconds if isinstance(rate, RateLimit) else DEFAULT_PER_SECONDS

    def on_gateway(self) -> bool:
        """Whether the base URL is a Service CRM gateway host (the sandbox's simulator counts as one)."""
        return self.options.sandbox or bool(GATEWAY_HOST.match(urlsplit(self.base_url).hostname or ""))

    def refusal_hint(self) -> str:
        """What a 401/403 most likely means for this destination."""
        if not self.on_gateway():
            return CORE_HOST_HINT
        return ("the access or secret key was refused (or the Service CRM API is not enabled in the account: "
                "Settings > Service Cloud > API Configurations)")

    def doctor_request(self) -> VendorRequest | str:
        """A look-up of ticket 0, which no account has: "not found" proves host, keys and the API switch."""
        org_id, _, _ = self.keys()
        headers = {k: v for k, v in self._headers("application/json").items() if k != "Content-Type"}
        return VendorRequest(method="GET", url=self.base_url + details_path(org_id, DOCTOR_TICKET), headers=headers,
                             body=b"")

    def diagnose(self, status: int, headers: Mapping[str, str], body: bytes) -> Diagnosis:
        parsed = decode_json(body)
        data = lower_keys(parsed) if isinstance(parsed, dict) else {}
        kind = text_or_none(data.get("exceptiontype")) or ""
        said = ": ".join(p for p in (kind, text_or_none(data.get("exceptionmessage"))
                                     or text_or_none(data.get("message"))) if p) or excerpt(body)
        if status == 200 or (status == 404 and "ticketnotfound" in kind.lower()):
            return Diagnosis(ok=True, said=f"host, keys and the Service CRM API work (a look-up of ticket "
                                           f"{DOCTOR_TICKET} in org {self.keys()[0]} answered HTTP {status}"
                                           f"{': ' + kind if kind else ''})")
        if status in (401, 403) and not self.on_gateway():
            return Diagnosis(ok=False, said=f"HTTP {status}: {CORE_HOST_HINT}: {said}", fix=GATEWAY_FIX)
        if status in (401, 403) and "not enabled" in said.lower():
            return Diagnosis(ok=False, said=f"HTTP {status}: the Service CRM API is not enabled: {said}",
                             fix=ENABLE_FIX)
        if status in (401, 403):
            return Diagnosis(ok=False, said=f"HTTP {status}: the access or secret key was refused, or the Service "
                                            f"CRM API is not enabled: {said}",
                             fix=f"check access_key and secret_key (My Account > Settings > API and Webhooks); "
                                 f"{ENABLE_FIX[0].lower()}{ENABLE_FIX[1:]}")
        if status == 404:
            return Diagnosis(ok=False, said=f"HTTP 404: the org or the API path was not found: {said}",
                             fix="org_id is the account number shown at the bottom of the profile-icon menu; "
                                 "base_url must be the Service CRM gateway host")
        if status == 429 or "ratelimit" in kind.lower():
            return Diagnosis(ok=False, said=f"HTTP {status}: rate limited now, nothing checked: {said}",
                             fix="run doctor again in a few seconds")
        return Diagnosis(ok=False, said=f"HTTP {status}: {said}")

    def _headers(self, content_type: str) -> dict[str, str]:
        _, access_key, secret_key = self.keys()
        return {"X-LSQ-ACCESS-KEY": access_key, "X-LSQ-SECRET-KEY": secret_key, "Content-Type": content_type}

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        if action not in ACTIONS:
            raise MappingError(f"leadsquared has no action {action!r}; it takes: {', '.join(ACTIONS)}")
        org_id, _, _ = self.keys()
        fields, files = split_files(fields)
        if action == "create_ticket":
            dto = self.envelope(self.note_files(fields, files, NOTE_FIELD, sent=True), options)
            return self._ticket_request("POST", self.base_url + tickets_path(org_id), dto, files)
        ticket_id = numeric_id(ticket_id_from(fields, (ID_FIELD,), ticket, "leadsquared"))
        if action == "delete_ticket":
            # Admin keys only; moves the ticket to the trash [doc `delete-tickets`].
            return VendorRequest(method="PUT", url=self.base_url + trash_path(org_id),
                                 headers=self._headers("application/json"),
                                 body=msgspec.json.encode({"TicketIds": [ticket_id]}))
        if action == "update_ticket":
            dto = self.envelope(self.note_files(fields, files, NOTE_FIELD, sent=True), options, ticket_id)
            # Documented only as multipart (`ticketDTO` and `files`); sent so even without files.
            return self._ticket_request("PUT", self.base_url + update_path(org_id, ticket_id), dto, files,
                                        always_multipart=True)
        text_field = TEXT_FIELD[action]
        text = fields.get(text_field)
        if blank(text) or isinstance(text, dict | list):
            raise MappingError(f"leadsquared {action} needs text, got {text!r}", path=text_field)
        extra = {k: v for k, v in fields.items() if k not in (ID_FIELD, text_field)}
        if action == "add_activity":
            direction = str(extra.pop("Direction", "INBOUND") or "INBOUND").upper()
            if direction not in DIRECTIONS:
                raise MappingError(f"{direction!r} is not one of {', '.join(DIRECTIONS)}", path="Direction")
            body: dict[str, Any] = {"Text": str(text), "Direction": direction, **extra}
            url = self.base_url + activity_path(org_id, ticket_id)
        else:
            body = {"TextPart": str(text), "ActivityType": "CreateInternalNote",
                    "StorageType": "Permament",  # sic: the documented spelling
                    **extra, "RelatedTicketId": int(ticket_id)}
            url = self.base_url + note_path(org_id)
        return VendorRequest(method="POST", url=url, headers=self._headers("application/json"),
                             body=msgspec.json.encode(body))

    def _ticket_request(self, method: str, url: str, dto: dict[str, Any], files: FileSet | None, *,
                        always_multipart: bool = False) -> VendorRequest:
        """A create or update: JSON, or multipart/form-data with the JSON as the `ticketDTO` part and one
        `files` part per file when there are files to send (or always, for the update)."""
        encoded = msgspec.json.encode(dto)
        parts = file_parts(files)
        if not parts and not always_multipart:
            return VendorRequest(method=method, url=url, headers=self._headers("application/json"), body=encoded)
        body, content_type = multipart_body([Part(name="ticketDTO", content=encoded), *parts])
        return VendorRequest(method=method, url=url, headers=self._headers(content_type), body=body)

    def ticket_id_at(self, action: str) -> str | None:
        return "Id (or TicketId)" if action == "create_ticket" else None

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        parsed = decode_json(body)
        data = lower_keys(parsed) if isinstance(parsed, dict) else {}
        state = str(data.get("status") or "").lower()
        reason = (text_or_none(data.get("exceptionmessage")) or text_or_none(data.get("reasonforfailure"))
                  or text_or_none(data.get("message")))
        kind = text_or_none(data.get("exceptiontype"))
        detail = ": ".join(p for p in (kind, reason) if p) or excerpt(body)
        if status in (401, 403):
            return Outcome(classification="auth", error=f"leadsquared: HTTP {status}: {self.refusal_hint()}: {detail}")
        if (kind and kind.lower() == RATE_LIMIT_EXCEPTION) or status == 429:
            # Reported to come back inside an HTTP 200 too; wait at least the account's window. A 429 without
            # Retry-After leaves the wait to the delivery loop, which pauses the destination for its limiter's window.
            said = parse_retry_after(headers.get("Retry-After"))
            wait = None if status == 429 and said is None else max(said or 0.0, self.window_s)
            return Outcome(classification="retry", error=f"leadsquared: HTTP {status}: {detail}", retry_after=wait,
                           rate_limited=True)
        if kind and kind.lower().startswith("mx"):
            # "Application errors (… exceptions starting with 'MX') are not retried", whatever the HTTP code.
            return Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: {detail}")
        by_status = classify_status(status, headers)
        if by_status is not None:
            by_status.error = f"leadsquared: {by_status.error}: {detail}"
            return by_status
        if 200 <= status < 300 and action == "delete_ticket" and "successfulids" in data:
            return deleted(data, status)
        if 200 <= status < 300 and data and not kind:
            if action == "add_note" and state not in ("error", "failure", "failed"):
                # The note's answer has no Status: {"Message": "Activity Created", "RelatedTicketId": "143"}.
                return succeeded(answer_id(data.get("relatedticketid"), "RelatedTicketId"))
            if state == "success":
                if action == "add_activity":  # its `Id` is the activity's, not the ticket's
                    return Outcome(classification="success")
                # The numeric Id is what every later call takes; the UUID TicketId only if no Id came back.
                uuid = answer_id(data.get("ticketid"), "TicketId", "ticket uuid")
                ticket = first_id((("Id", data.get("id")), ("TicketId", data.get("ticketid"))))
                if ticket.text == uuid.text:  # the id is the uuid (or neither is kept): its problem is said once
                    uuid = AnswerId(uuid.text)
                return succeeded(ticket, key=answer_id(data.get("key"), "Key", "ticket key"), uuid=uuid)
        if not isinstance(parsed, dict) and 200 <= status < 300:
            return unreadable_success("leadsquared", status, body)
        if not data:
            return Outcome(classification="permanent",
                           error=f"leadsquared: HTTP {status} with a body that is not a JSON object: {excerpt(body)}")
        return Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: {detail}")
