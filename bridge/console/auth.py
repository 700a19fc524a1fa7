"""Who is calling the admin API: the admin token (reads and changes) or a named read-only token."""

from __future__ import annotations

import hmac
from typing import Literal

import msgspec

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
    """The caller an `Authorization: Bearer …` value names, or None. Every token is compared (in constant
    time), so the answer's timing says nothing about which one came close."""
    scheme, _, given = authorization.partition(" ")
    token = given.strip().encode("utf-8", "surrogatepass")
    if scheme.lower() != "bearer" or not token:
        return None
    found: Caller | None = None
    if admin.token and hmac.compare_digest(admin.token.encode("utf-8", "surrogatepass"), token):
        found = Caller(ADMIN_NAME, "admin")
    for name, expected in admin.read_tokens.items():
        if hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), token) and found is None:
            found = Caller(name, "read")
    return found
