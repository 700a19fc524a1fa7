"""A body sent with a Content-Encoding, on the server as `serve` runs it: never inflated, on any path. aiohttp's
parser would unpack gzip, deflate and br on the event loop as the bytes arrive, before any route or limit (194 KB
of gzip posted to a path answered 404 held the loop over a second); the connection guard turns that off, and
intake and the admin API refuse such a body with a 415 naming the encoding, unread."""

from __future__ import annotations

import gzip
from typing import Any

import brotli
import pytest
from aiohttp import http_parser

from tests.acceptance.rawhttp import RawClient
from tests.acceptance.test_server_header import ADMIN, JSON, served
from tests.conftest import ConfigFactory

MAX_BODY_BYTES = 1_048_576  # test_server_header's source and mapping, taking bodies larger than the ones posted
INFLATES = b"x" * 20_000_000  # 20 MB: some 20 KB once compressed


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    return {"gzip": gzip.compress(INFLATES), "br": brotli.compress(INFLATES, quality=1)}


@pytest.fixture
def inflaters(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each decompressor aiohttp's parser makes for a request body (its C parser makes them through the same
    module's DeflateBuffer), by encoding."""
    made: list[str] = []

    def counting(kind: Any, name: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            return kind(*args, **kwargs)
        return make

    monkeypatch.setattr(http_parser, "ZLibDecompressor", counting(http_parser.ZLibDecompressor, "zlib"))
    monkeypatch.setattr(http_parser, "BrotliDecompressor", counting(http_parser.BrotliDecompressor, "br"))
    return made


@pytest.mark.parametrize("coding", ["gzip", "br"])
async def test_an_encoded_body_is_refused_with_415_on_intake_and_inflated_on_no_path(
        write_config: ConfigFactory, encoded: dict[str, bytes], inflaters: list[str], coding: str) -> None:
    """The same compressed body posted to a source, an unknown source, an unknown path, /healthz and the admin
    API: each answered as ever (a source and the admin API with a 415 naming the encoding, never reading the
    body), and not one decompressor made for any of them."""
    body = encoded[coding]
    sent = ("Content-Encoding", coding)
    async with served(write_config, max_body_bytes=MAX_BODY_BYTES) as port:
        raw = RawClient("127.0.0.1", port)
        try:
            hook = await raw.post("/hooks/partner", body, [JSON, sent])
            assert hook.status == 415, hook.body
            refused = hook.json()
            assert refused["accepted"] is False and refused["check"] == "content_encoding", refused
            assert f"Content-Encoding '{coding}'" in str(refused["error"]), refused
            assert (await raw.post("/hooks/nosuch", body, [JSON, sent])).status == 404
            assert (await raw.post("/no/such/path", body, [JSON, sent])).status == 404
            assert (await raw.post("/healthz", body, [sent])).status == 405
            admin = await raw.post("/admin/api/playground", body, [ADMIN, JSON, sent])
            assert admin.status == 415 and b"Content-Encoding" in admin.body, admin.body
            assert (await raw.request("GET", "/healthz", b"", [])).status == 200
            plain = await raw.post("/hooks/partner", b'{"title": "Router down"}',
                                   [JSON, ("Content-Encoding", "identity")])
            assert plain.status == 202, plain.body
        finally:
            await raw.close()
    assert inflaters == []
