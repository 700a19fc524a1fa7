"""The generic `http` vendor's `auth:` block: a fixed header, basic, bearer, or OAuth2 client credentials
(a token from the token endpoint, kept until shortly before it expires and obtained again once when refused)."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import msgspec

from bridge.config import Base
from bridge.errors import VALUE
from bridge.offload import read_answer_off_loop
from bridge.vendors.base import (
    VendorAuthFailed,
    VendorUnavailable,
    read_bounded,
    text_or_none,
    token_answer,
)
from bridge.vendors.credentials import Credentials, StaticCredentials, Token, TokenCredentials
from bridge.yamlfile import KeyValueError

TOKEN_ANSWER_BYTES = 64 * 1024


SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"  # noqa: S105 - the simulator's demo client, not a secret


def _required(struct: msgspec.Struct, *keys: str) -> None:
    for key in keys:
        if not str(getattr(struct, key)).strip():
            raise KeyValueError((key,), f"`{key}` is empty: give it (secrets from the environment, e.g. \"${{VAR}}\")")


def basic(username: str, password: str) -> str:
    """An `Authorization: Basic` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class HeaderAuth(Base):
    name: str
    value: str

    def __post_init__(self) -> None:
        _required(self, "name", "value")


class BasicAuth(Base):
    username: str
    password: str

    def __post_init__(self) -> None:
        _required(self, "username")


class OAuth2ClientCredentials(Base):
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    audience: str | None = None
    # How the client proves itself to the token endpoint: HTTP Basic (RFC 6749's preferred way) or in the form.
    client_auth: Literal["basic", "body"] = "basic"

    def __post_init__(self) -> None:
        _required(self, "client_id", "client_secret")
        if not self.token_url.startswith(("http://", "https://", "/")):
            raise KeyValueError(("token_url",), f"`token_url` {VALUE} must be a URL (https://…) or a path under the "
                                "destination's base_url (/oauth/token)", self.token_url)


class HttpAuth(Base):
    """One of `header`, `basic`, `bearer` or `oauth2`."""

    header: HeaderAuth | None = None
    basic: BasicAuth | None = None
    bearer: str | None = None
    oauth2: OAuth2ClientCredentials | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("header", "basic", "bearer", "oauth2") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `header: {name, value}`, `basic: {username, password}`, "
                             f"`bearer: TOKEN` or `oauth2: {{token_url, client_id, client_secret}}`; got "
                             f"{', '.join(given) or 'none'}")
        if self.bearer is not None and not self.bearer.strip():
            raise KeyValueError(("bearer",), "`bearer` is empty: give the token (from the environment)")


class OAuth2Credentials(TokenCredentials):
    """An access token from the client-credentials grant (RFC 6749 §4.4)."""

    def __init__(self, destination: str, config: OAuth2ClientCredentials, base_url: Callable[[], str],
                 timeout_s: float, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(destination, clock=clock)
        self.config = config
        self.base_url = base_url
        self.timeout_s = timeout_s

    @property
    def token_url(self) -> str:
        url = self.config.token_url
        return self.base_url() + url if url.startswith("/") else url

    def token_named(self) -> str:
        return f"http: the token endpoint {self.token_url} answered an access_token that"

    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        c = self.config
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        if c.scope:
            form["scope"] = c.scope
        if c.audience:
            form["audience"] = c.audience
        if c.client_auth == "basic":
            headers["Authorization"] = basic(c.client_id, c.client_secret)
        else:
            form.update(client_id=c.client_id, client_secret=c.client_secret)
        async with session.post(self.token_url, data=form, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
            status, raw = resp.status, await read_bounded(resp, TOKEN_ANSWER_BYTES)
            content_type = resp.headers.get("Content-Type")
        # Up to 64 KiB, read on the loop, leniently there only when short (`read_answer_off_loop`).
        data, said = await read_answer_off_loop(token_answer, raw, content_type, "error", "error_description")
        if status in (400, 401, 403):
            raise VendorAuthFailed(f"http: the token endpoint {self.token_url} refused the client "
                                   f"(HTTP {status}: {said}): check auth.oauth2.client_id, client_secret and scope")
        if not 200 <= status < 300:
            raise VendorUnavailable(f"http: the token endpoint {self.token_url} answered HTTP {status}: {said}")
        # RFC 6749 §5.1 answers 200; any 2xx with a token is taken as its answer (some servers say 201).
        token = text_or_none(data.get("access_token"))
        if token is None:
            raise VendorUnavailable(f"http: the token endpoint {self.token_url} answered HTTP {status} without an "
                                    f"access_token: {said}")
        now = self.clock()
        # `expires_in` is only RECOMMENDED (RFC 6749 §5.1): without it the token is kept until it is refused.
        seconds = expires_in_seconds(data.get("expires_in"))
        return Token(value=token, expires_at=None if seconds is None else now + seconds, obtained_at=now)


EXPIRES_IN_DIGITS = 12
"""The most digits an `expires_in` given as text is read with (31,000 years of seconds): a longer one is no
lifetime, and Python refuses to read 4,300 digits or more as a number at all."""


def expires_in_seconds(value: Any) -> float | None:
    """An OAuth2 answer's `expires_in` as seconds: a positive, finite number, or text of at most EXPIRES_IN_DIGITS
    digits; None for anything else (absent, zero, negative, a boolean, text of thousands of digits), and the token
    is then kept until it is refused."""
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > EXPIRES_IN_DIGITS:
            return None
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # a whole number too large for a float
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def http_credentials(destination: str, auth: HttpAuth, base_url: Callable[[], str], timeout_s: float
                     ) -> Credentials:
    """The credentials an `auth:` block describes."""
    if auth.oauth2 is not None:
        return OAuth2Credentials(destination, auth.oauth2, base_url, timeout_s)
    if auth.header is not None:
        return StaticCredentials({auth.header.name: auth.header.value})
    if auth.basic is not None:
        return StaticCredentials({"Authorization": basic(auth.basic.username, auth.basic.password)})
    assert auth.bearer is not None
    return StaticCredentials({"Authorization": f"Bearer {auth.bearer}"})
