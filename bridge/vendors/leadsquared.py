"""LeadSquared Service CRM: tickets created through the tenants API, fields wrapped in its envelope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from bridge.config import DestinationConfig, RateLimit
from bridge.errors import MappingError
from bridge.vendors.base import (
    Adapter,
    Outcome,
    VendorRequest,
    blank,
    classify_status,
    decode_json,
    excerpt,
    lower_keys,
    text_or_none,
)

SANDBOX_ORG = "sandbox-org"
SANDBOX_ACCESS_KEY = "sandbox-access-key"
SANDBOX_SECRET_KEY = "sandbox-secret-key"  # noqa: S105 - the built-in simulator's demo key, not a secret
# LeadSquared's documented limit ("API calls exceeded the limit of 25 in 5 second(s)").
DEFAULT_REQUESTS, DEFAULT_PER_SECONDS = 25, 5.0
# The request must carry one of these; `LeadId` goes in the envelope, the others in `Fields`.
LEAD_FIELDS = ("LeadId", "LeadDetail.EmailAddress", "LeadDetail.Phone")
# Mapping `options:` that override the envelope.
ENVELOPE_OPTIONS = ("TypeId", "RelatedTicketTypeId")
# Exception types of a `Status: Error` answer that say the request itself is wrong, so a retry cannot help
# even when it comes with HTTP 5xx (as LeadSquared's API sends its validation errors).
REJECTION_MARKERS = ("invalid", "duplicate", "mandatory", "required", "validation", "notfound", "argument")


def tickets_path(org_id: str) -> str:
    return f"/api/tenants/{org_id}/tickets"


class LeadSquaredOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    org_id: str = ""
    access_key: str = ""
    secret_key: str = ""
    type_id: str = "1"
    related_ticket_type_id: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sandbox:
            missing = [k for k in ("org_id", "access_key", "secret_key") if not getattr(self, k)]
            if missing:
                raise ValueError(f"{', '.join(f'`{k}`' for k in missing)} required: the org id and the "
                                 "access and secret keys from LeadSquared's API settings")
        if self.rate_limit is None:
            self.rate_limit = RateLimit(requests=DEFAULT_REQUESTS, per_seconds=DEFAULT_PER_SECONDS)


class LeadSquaredAdapter(Adapter):
    vendor: ClassVar[str] = "leadsquared"
    Options: ClassVar[type[DestinationConfig]] = LeadSquaredOptions
    actions: ClassVar[frozenset[str]] = frozenset({"create_ticket"})

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        problems = [f"options.{key}: unknown LeadSquared option; known: {', '.join(ENVELOPE_OPTIONS)}"
                    for key in options if key not in ENVELOPE_OPTIONS]
        if action == "create_ticket" and not any(f in fields for f in LEAD_FIELDS):
            problems.append(f"fields: leadsquared create_ticket needs one of {', '.join(LEAD_FIELDS)}")
        return problems

    @property
    def options(self) -> LeadSquaredOptions:
        assert isinstance(self.config, LeadSquaredOptions)
        return self.config

    def credentials(self) -> tuple[str, str, str]:
        o = self.options
        if o.sandbox:
            return (o.org_id or SANDBOX_ORG, o.access_key or SANDBOX_ACCESS_KEY, o.secret_key or SANDBOX_SECRET_KEY)
        return o.org_id, o.access_key, o.secret_key

    def envelope(self, fields: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The ticket body: TypeId, Id, LeadId, Fields (in mapping order) and RelatedTicketTypeId."""
        if all(blank(fields.get(name)) for name in LEAD_FIELDS):
            raise MappingError(f"leadsquared needs one of {', '.join(LEAD_FIELDS)} with a value; "
                               "all are missing or empty", path="LeadDetail.EmailAddress")
        type_id = options.get("TypeId", self.options.type_id)
        related = options.get("RelatedTicketTypeId", self.options.related_ticket_type_id)
        lead_id = fields.get("LeadId")
        return {
            "TypeId": str(type_id),
            "Id": None,
            "LeadId": None if blank(lead_id) else lead_id,
            "Fields": [{"SchemaName": name, "Value": value} for name, value in fields.items() if name != "LeadId"],
            "RelatedTicketTypeId": related,
        }

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        if action != "create_ticket":
            raise MappingError(f"leadsquared has no action {action!r}; it takes: create_ticket")
        org_id, access_key, secret_key = self.credentials()
        return VendorRequest(
            method="POST", url=self.base_url + tickets_path(org_id),
            headers={"X-LSQ-ACCESS-KEY": access_key, "X-LSQ-SECRET-KEY": secret_key,
                     "Content-Type": "application/json"},
            body=msgspec.json.encode(self.envelope(fields, options)),
        )

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        parsed = decode_json(body)
        data = lower_keys(parsed) if isinstance(parsed, dict) else {}
        state = str(data.get("status") or "").lower()
        reason = (text_or_none(data.get("exceptionmessage")) or text_or_none(data.get("reasonforfailure"))
                  or text_or_none(data.get("message")))
        kind = text_or_none(data.get("exceptiontype"))
        detail = ": ".join(p for p in (kind, reason) if p) or excerpt(body)
        if status in (401, 403):
            return Outcome(classification="auth", error=f"leadsquared: HTTP {status}: the access or secret key "
                                                        f"was refused: {detail}")
        if status >= 500 and state == "error" and kind and any(m in kind.lower() for m in REJECTION_MARKERS):
            return Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: {detail}")
        by_status = classify_status(status, headers)
        if by_status is not None:
            by_status.error = f"leadsquared: {by_status.error}: {detail}"
            return by_status
        if 200 <= status < 300 and state == "success":
            ticket_id = text_or_none(data.get("ticketid")) or text_or_none(data.get("id"))
            return Outcome(classification="success", ticket_id=ticket_id, ticket_key=text_or_none(data.get("key")))
        if not data:
            return Outcome(classification="permanent",
                           error=f"leadsquared: HTTP {status} with a body that is not a JSON object: {excerpt(body)}")
        return Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: {detail}")
