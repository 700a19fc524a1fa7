"""bridge/admin.py's token check on its own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from aiohttp.http_parser import HeadersParser
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request

from bridge.admin import refuse


def test_a_token_with_undecodable_bytes_is_refused_not_a_crash() -> None:
    """A header whose bytes are not UTF-8 (aiohttp keeps them as surrogates) gets 401, never a server error."""
    headers, _ = HeadersParser().parse_headers([b"Authorization: Bearer s\xffcret", b""])
    answer = refuse(cast(Request, SimpleNamespace(headers=headers)), "secret")
    assert answer is not None
    assert answer.status == 401


def test_the_right_token_passes() -> None:
    """The configured token, as a bearer token, lets the request through."""
    request = make_mocked_request("GET", "/admin/mappings", headers={"Authorization": "Bearer secret"})
    assert refuse(request, "secret") is None
