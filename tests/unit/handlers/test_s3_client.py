"""handlers/s3_client.py: reading one object from a real S3-compatible server, within a size cap and a timeout,
with every failure sorted into gone, too large, or worth another try."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from aiohttp import web

from handlers.s3_client import LARGE_BYTES, S3Client, S3Config, S3NoSuchKey, S3TooLarge, S3Unavailable
from tests.conftest import eventually
from tests.fixtures.s3 import BUCKET, S3Server, s3_serving


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    yield from s3_serving(monkeypatch)


@pytest.fixture
async def make_client() -> AsyncIterator[Any]:
    made: list[S3Client] = []

    def make(url: str, **options: Any) -> S3Client:
        client = S3Client(S3Config(endpoint_url=url, **options), "us-east-1")
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def test_reads_an_object_whole(s3: S3Server, make_client: Any) -> None:
    """A 2 MB object comes back byte for byte."""
    data = os.urandom(2 * 1024 * 1024)
    s3.put("inbound/big", data)
    assert (await make_client(s3.url).get(BUCKET, "inbound/big")).data == data


async def test_one_client_serves_every_read(s3: S3Server, make_client: Any) -> None:
    """The client is made at the first read and kept for the next; after `close`, a read makes a new one."""
    s3.put("a", b"first")
    s3.put("b", b"second")
    client = make_client(s3.url)
    assert (await client.get(BUCKET, "a")).data == b"first"
    kept = client._client
    assert (await client.get(BUCKET, "b")).data == b"second"
    assert client._client is kept
    await client.close()
    assert client._client is None
    assert (await client.get(BUCKET, "a")).data == b"first"


@pytest.mark.parametrize(("configured", "environment", "expected"), [
    ("eu-central-1", "ap-south-1", "eu-central-1"),
    (None, "ap-south-1", "ap-south-1"),
    (None, None, "eu-west-1"),
])
async def test_region_is_the_option_then_the_environment_then_the_topic(
        s3: S3Server, monkeypatch: pytest.MonkeyPatch, configured: str | None, environment: str | None,
        expected: str) -> None:
    """The client's region is `s3.region`, else the environment's, else the SNS topic's (the default given)."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    if environment is not None:
        monkeypatch.setenv("AWS_DEFAULT_REGION", environment)
    client = S3Client(S3Config(endpoint_url=s3.url, region=configured), "eu-west-1")
    try:
        await client.open()
        assert client._client.meta.region_name == expected
    finally:
        await client.close()


async def test_missing_key_is_no_such_key(s3: S3Server, make_client: Any) -> None:
    """An object the bucket does not hold is S3NoSuchKey, naming the bucket and key."""
    with pytest.raises(S3NoSuchKey, match=f"s3://{BUCKET}/inbound/gone does not exist"):
        await make_client(s3.url).get(BUCKET, "inbound/gone")


async def test_missing_bucket_is_unavailable(s3: S3Server, make_client: Any) -> None:
    """A bucket that does not exist is a setup to mend, so it is worth another try, not a message gone."""
    with pytest.raises(S3Unavailable, match="404 NoSuchBucket"):
        await make_client(s3.url).get("no-such-bucket", "inbound/x")


async def test_object_over_the_cap_is_refused_unread(s3: S3Server, make_client: Any) -> None:
    """An object whose stated length is over max_bytes is S3TooLarge, with its size."""
    s3.put("inbound/huge", b"x" * 5000)
    with pytest.raises(S3TooLarge, match=r"is 5000 bytes, over the source's s3\.max_bytes of 4096") as info:
        await make_client(s3.url, max_bytes=4096).get(BUCKET, "inbound/huge")
    assert info.value.size == 5000


async def test_server_down_is_unavailable(s3: S3Server, make_client: Any) -> None:
    """Connections refused is S3Unavailable; once the server is back, the same client reads the object."""
    s3.put("inbound/m", b"mail")
    client = make_client(s3.url)
    s3.stop()
    with pytest.raises(S3Unavailable, match="could not be read"):
        await client.get(BUCKET, "inbound/m")
    s3.start()
    assert (await client.get(BUCKET, "inbound/m")).data == b"mail"


async def test_no_credentials_is_unavailable(s3: S3Server, make_client: Any, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    """With no credentials anywhere (environment, config files, instance role), a read is S3Unavailable saying
    so: a setup to mend, after which SNS's retry succeeds."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3Unavailable, match="NoCredentialsError"):
        await make_client(s3.url).get(BUCKET, "inbound/m")


async def fake_s3(aiohttp_server: Any, handler: Any) -> str:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_server_error_is_unavailable(aiohttp_server: Any, make_client: Any, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    """A 5xx from S3 (after the client's own retry) is S3Unavailable, naming the status and code."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    calls = []

    async def broken(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=500, content_type="application/xml",
                            text="<Error><Code>InternalError</Code><Message>We encountered an internal error."
                                 "</Message></Error>")

    with pytest.raises(S3Unavailable, match="S3 answered 500 InternalError"):
        await make_client(await fake_s3(aiohttp_server, broken)).get(BUCKET, "inbound/m")
    assert calls == [f"/{BUCKET}/inbound/m"] * 2


async def test_unanswered_read_times_out(aiohttp_server: Any, make_client: Any, monkeypatch: pytest.MonkeyPatch,
                                         ) -> None:
    """A server that never answers is S3Unavailable once the source's timeout has passed."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    with pytest.raises(S3Unavailable, match=r"was not read within 0\.5s"):
        await make_client(await fake_s3(aiohttp_server, hang), timeout="0.5s").get(BUCKET, "inbound/m")


async def test_body_longer_than_the_cap_without_a_length_is_refused(aiohttp_server: Any, make_client: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A body sent without a length is read only up to the cap, then refused as S3TooLarge."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"y" * 1024)
        await response.write_eof()
        return response

    with pytest.raises(S3TooLarge, match=r"over the source's s3\.max_bytes of 4096"):
        await make_client(await fake_s3(aiohttp_server, endless), max_bytes=4096).get(BUCKET, "inbound/m")


async def test_body_cut_off_mid_read_is_unavailable(aiohttp_server: Any, make_client: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that drops before the stated length has arrived is S3Unavailable, never a short message."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "5000"})
        await response.prepare(request)
        await response.write(b"Subject: half a message\r\n")
        assert request.transport is not None
        request.transport.close()
        return response

    with pytest.raises(S3Unavailable, match="could not be read"):
        await make_client(await fake_s3(aiohttp_server, cut)).get(BUCKET, "inbound/m")


async def test_reads_at_once_are_capped(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No more than `max_reads` objects are read at once; the others wait their turn, then are read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    release = asyncio.Event()
    in_flight, most = [0], [0]

    async def slow(request: web.Request) -> web.Response:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await release.wait()
        in_flight[0] -= 1
        return web.Response(body=request.path.encode())

    client = S3Client(S3Config(endpoint_url=await fake_s3(aiohttp_server, slow)), "us-east-1", max_reads=2)
    try:
        reads = [asyncio.ensure_future(client.get(BUCKET, f"inbound/{n}")) for n in range(5)]
        await eventually(lambda: in_flight[0] == 2)
        assert not any(read.done() for read in reads)
        release.set()
        bodies = []
        for read in reads:  # each object let go of as soon as it is read, as a request answered at once would
            bodies.append((await read).data)
            (await read).release()
    finally:
        await client.close()
    assert bodies == [f"/{BUCKET}/inbound/{n}".encode() for n in range(5)]
    assert most[0] == 2


async def test_an_object_holds_its_turn_until_it_is_released(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    """An object read keeps its turn until `release` (the request that read it answered), not only while it is
    read: with 2 turns, both are taken while two objects are held, however fast S3 answers; a failed read gives
    its turn back at once, and a second `release` gives back nothing more."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    async def fast(request: web.Request) -> web.Response:
        if request.path.endswith("/gone"):
            return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=request.path.encode())

    client = S3Client(S3Config(endpoint_url=await fake_s3(aiohttp_server, fast)), "us-east-1", max_reads=2)
    turns = client._turns
    try:
        with pytest.raises(S3NoSuchKey):
            await client.get(BUCKET, "inbound/gone")
        first = await client.get(BUCKET, "inbound/0")
        assert not turns.locked()  # the failed read gave its turn back
        second = await client.get(BUCKET, "inbound/1")
        assert turns.locked()  # two objects held, though both are read: a third read waits for a turn
        first.release()
        first.release()
        assert not turns.locked()
        third = await client.get(BUCKET, "inbound/2")
        assert turns.locked()  # the second release gave back nothing more
        assert [first.data, second.data, third.data] == [f"/{BUCKET}/inbound/{n}".encode() for n in range(3)]
        second.release()
        third.release()
    finally:
        await client.close()


async def test_large_objects_held_at_once_are_fewer(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of the objects held, at most `max_large` are over LARGE_BYTES (those parsed in the parser thread, one at a
    time): another large read waits for one to be released, its length known and its body not read, while a small
    read is not held up."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (LARGE_BYTES + 1 if "large" in request.path else 10))

    client = S3Client(S3Config(endpoint_url=await fake_s3(aiohttp_server, answer)), "us-east-1", max_large=1)
    try:
        first = await client.get(BUCKET, "inbound/large-1")
        small = await client.get(BUCKET, "inbound/small")
        second = asyncio.ensure_future(client.get(BUCKET, "inbound/large-2"))
        await eventually(lambda: bool(client._large._waiters))  # its length read: waiting for a large turn
        assert not second.done()
        first.release()
        assert [len(first.data), len(small.data), len((await second).data)] == [LARGE_BYTES + 1, 10,
                                                                                 LARGE_BYTES + 1]
        second.result().release()
        small.release()
    finally:
        await client.close()


@pytest.mark.parametrize(("options", "message"), [
    ({"endpoint_url": "ftp://s3.example.net"}, "is not an http(s) URL with a host"),
    ({"endpoint_url": "https://"}, "is not an http(s) URL with a host"),
    ({"timeout": "0s"}, "must be more than 0s"),
    ({"region": "eu west 1"}, "is not a region name: write it as eu-west-1"),
    ({"timeout": "soon"}, "soon"),
    ({"max_bytes": 50 * 1024 * 1024}, "Expected `int` <= 41943040"),
    ({"bucket": "x"}, "unknown field `bucket`"),
])
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    """Each bad `s3` option is refused with what is wrong and what would be right."""
    with pytest.raises(msgspec.ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        msgspec.convert(options, S3Config)
