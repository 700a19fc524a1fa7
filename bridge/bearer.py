"""The one bearer-token check, used by sources with `auth.bearer` and by the admin API."""

from __future__ import annotations

import hmac
from typing import Literal

BearerCheck = Literal["ok", "missing", "wrong"]


def check_bearer(authorization: str, expected: str) -> BearerCheck:
    """Whether an `Authorization` header value carries `expected` as its bearer token: the scheme in any
    case, spaces around the token ignored, the comparison in constant time. Never raises: bytes that were
    not UTF-8 on the wire (kept as surrogates by aiohttp) are compared as they are, and never match."""
    scheme, _, given = authorization.partition(" ")
    token = given.strip()
    if scheme.lower() != "bearer" or not token:
        return "missing"
    same = hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))
    return "ok" if same else "wrong"
