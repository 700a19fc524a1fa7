"""Checks any source may carry: basic auth, bearer tokens, and a generic HMAC over the raw body."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from aiohttp import web

from bridge.bearer import check_bearer
from bridge.config import AuthConfig, Base
from bridge.errors import Rejected
from handlers.signing import same

Algorithm = Literal["sha1", "sha256", "sha512"]


class HmacConfig(Base):
    secret: str
    header: str = "X-Signature"
    algorithm: Algorithm = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("`secret` is empty: set it from the environment, e.g. secret: ${PARTNER_SECRET}")


def check_auth(auth: AuthConfig | None, request: web.Request) -> None:
    """Raise Rejected(401) unless the request carries the configured credentials."""
    if auth is None:
        return
    header = request.headers.get("Authorization", "")
    if auth.basic is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise Rejected(401, "basic auth required", check="basic_auth")
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
            raise Rejected(401, "basic auth header is not valid base64", check="basic_auth") from None
        ok_user = hmac.compare_digest(user.encode(), auth.basic.username.encode())
        ok_password = hmac.compare_digest(password.encode(), auth.basic.password.encode())
        if not (ok_user and ok_password and password):  # an empty password is never a credential
            raise Rejected(401, "wrong username or password", check="basic_auth")
    elif auth.bearer is not None:
        bearer = check_bearer(header, auth.bearer)
        if bearer == "missing":
            raise Rejected(401, "bearer token required", check="bearer")
        if bearer == "wrong":
            raise Rejected(401, "wrong bearer token", check="bearer")


def hmac_digest(secret: bytes, message: bytes, algorithm: Algorithm) -> bytes:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).digest()


def signature_matches(expected: bytes, given: str, encoding: Literal["hex", "base64"]) -> bool:
    """Constant-time comparison of a raw digest against its hex or base64 text."""
    if encoding == "hex":
        return same(expected.hex(), given.lower())
    return same(base64.b64encode(expected), given)


def check_hmac(cfg: HmacConfig, request: web.Request, body: bytes, *, check: str = "hmac") -> None:
    """Rejected(401, check) unless `cfg.header` holds `cfg.prefix` and the HMAC of the raw body. Providers that
    sign the body alone (Typeform, Tally, Intercom, Meta) are this check with a fixed config."""
    given = request.headers.get(cfg.header)
    if not given:
        raise Rejected(401, f"signature header {cfg.header} is missing", check=check)
    if cfg.prefix:
        if not given.startswith(cfg.prefix):
            raise Rejected(401, f"signature header {cfg.header} does not start with {cfg.prefix!r}", check=check)
        given = given[len(cfg.prefix):]
    expected = hmac_digest(cfg.secret.encode(), body, cfg.algorithm)
    if not signature_matches(expected, given, cfg.encoding):
        raise Rejected(401, f"signature in {cfg.header} does not match the body", check=check)
