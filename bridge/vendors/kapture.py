"""Kapture CRM: tickets created from other sources, one JSON array per request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from bridge.config import DestinationConfig
from bridge.errors import MappingError
from bridge.vendors.base import Adapter, Outcome, VendorRequest, classify_status, decode_json, excerpt

CREATE_PATH = "/add-ticket-from-other-source.html/v.2.0"
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the built-in simulator's well-known demo key, not a secret


class KaptureOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    token: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.token and not self.sandbox:
            raise ValueError("`token` is required: the key from Kapture's Partner/API configuration")


def _lower_keys(body: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in body.items()}


def ticket_id_of(body: Mapping[str, Any]) -> str | None:
    """`ticket_id`, else `ticket.ticketId`, else `Ticket Id`."""
    for key in ("ticket_id", "Ticket Id"):
        value = body.get(key)
        if value not in (None, ""):
            return str(value)
    ticket = body.get("ticket")
    if isinstance(ticket, Mapping) and ticket.get("ticketId") not in (None, ""):
        return str(ticket["ticketId"])
    return None


class KaptureAdapter(Adapter):
    vendor: ClassVar[str] = "kapture"
    Options: ClassVar[type[DestinationConfig]] = KaptureOptions
    actions: ClassVar[frozenset[str]] = frozenset({"create_ticket"})

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        if action == "create_ticket" and "title" not in fields:
            return ["title: kapture create_ticket needs a `title` field"]
        return []

    @property
    def token(self) -> str:
        assert isinstance(self.config, KaptureOptions)
        return self.config.token or (SANDBOX_TOKEN if self.config.sandbox else "")

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any]) -> VendorRequest:
        if action != "create_ticket":
            raise MappingError(f"kapture has no action {action!r}")
        title = fields.get("title")
        if title is None or (isinstance(title, str) and not title.strip()):
            raise MappingError("kapture create_ticket needs a non-empty `title`", path="title")
        return VendorRequest(
            method="POST", url=self.base_url + CREATE_PATH,
            headers={"Authorization": f"Basic {self.token}", "Content-Type": "application/json"},
            body=msgspec.json.encode([fields]),
        )

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        parsed = decode_json(body)
        if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
            parsed = parsed[0]
        data = _lower_keys(parsed) if isinstance(parsed, dict) else None
        message = str(data.get("message") or "") if data else ""
        if data is not None and "invalid auth key" in message.lower():
            return Outcome(classification="auth", error=f"kapture: {message}")
        by_status = classify_status(status, headers)
        if by_status is not None:
            if message:
                by_status.error = f"{by_status.error}: {message}"
            return by_status
        if data is None:
            return Outcome(classification="permanent",
                           error=f"kapture: HTTP {status} with a body that is not a JSON object: {excerpt(body)}")
        state = str(data.get("status") or "").lower()
        if state == "success" and 200 <= status < 300:
            assert isinstance(parsed, dict)
            return Outcome(classification="success", ticket_id=ticket_id_of(parsed))
        reason = message or f"status {data.get('status')!r}"
        return Outcome(classification="permanent", error=f"kapture: HTTP {status}: {reason}")
