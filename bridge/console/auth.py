"""Who is calling the admin API: the admin token (reads and changes) or a named read-only token."""

from __future__ import annotations

from typing import Literal

import msgspec

from bridge.bearer import check_bearer
from bridge.config import AdminConfig

Role = Literal["admin", "read"]
ADMIN_NAME = "admin"


class Caller(msgspec.Struct, frozen=True):
    name: str
    role: Role


def api_on(admin: AdminConfig) -> bool:
    """The API is off (404) while no token is configured at all."""
    return bool(admin.token or admin.read_tokens)


def identify(authorization: str, admin: AdminConfig) -> Caller | None:
    """The caller an `Authorization: Bearer …` value names, or None. Every token is checked (each in constant
    time), so the answer's timing says nothing about which one came close."""
    found: Caller | None = None
    if admin.token and check_bearer(authorization, admin.token) == "ok":
        found = Caller(ADMIN_NAME, "admin")
    for name, expected in admin.read_tokens.items():
        if check_bearer(authorization, expected) == "ok" and found is None:
            found = Caller(name, "read")
    return found
