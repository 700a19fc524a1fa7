"""Reading one object from S3 or an S3-compatible server: SES's S3 receipt action stores the raw message in a
bucket and tells the bridge the bucket and key. Needs the `ses-s3` extra (aiobotocore, the asyncio form of the
AWS SDK: it signs, resolves credentials from the environment, the shared config or the instance role, and
follows S3's region redirects)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import io
import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from msgspec import Meta

from bridge.config import check_duration
from bridge.durations import parse_duration
from bridge.errors import VALUE
from bridge.offload import LOOP_BYTES
from bridge.yamlfile import KeyValueError

MAX_SES_MESSAGE_BYTES = 40 * 1024 * 1024
"""The largest message SES receives with the S3 action (40 MB): no larger object can come from it."""
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
"""The default cap on one object: the largest message the common mail services send (25 MB)."""
CHUNK_BYTES = 256 * 1024
MAX_READS = 8
"""Objects read or held at once per source: a turn is taken before the read and kept until the request that read
the object is answered (`S3Object.release`), through its parse and storing, not only while it is read; the others
wait their turn within their timeout."""
MAX_LARGE = 2
"""Of those, objects over LARGE_BYTES: one parsed in the parser thread while the next is read. Parses run one at
a time there, so more would only hold more messages waiting; this is what bounds memory (two messages of
`max_bytes`, and what their parse builds) however many large ones arrive together."""
LARGE_BYTES = LOOP_BYTES
"""An object larger than this is parsed in the parser thread (bridge/offload.py), and takes a large turn."""
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


class S3Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where and how the bridge reads objects: `s3: {}` takes AWS with the environment's credentials and region."""

    endpoint_url: str | None = None
    """An S3-compatible server (MinIO, Ceph, a test server): `https://s3.example.net:9000`."""
    region: str | None = None
    """The bucket's region; by default the environment's (AWS_DEFAULT_REGION, or the profile's), else the topic's."""
    max_bytes: Annotated[int, Meta(ge=1024, le=MAX_SES_MESSAGE_BYTES)] = DEFAULT_MAX_BYTES
    """The largest object read; a larger one is refused (413) and left in the bucket."""
    timeout: str = "10s"
    """The whole read, retries included: short, as SNS waits for the answer meanwhile."""

    def __post_init__(self) -> None:
        check_duration(self.timeout, ("timeout",))
        if parse_duration(self.timeout) <= 0:
            raise KeyValueError(("timeout",), f"`s3.timeout` {VALUE} must be more than 0s", self.timeout)
        if self.region is not None and not _REGION.fullmatch(self.region):
            raise KeyValueError(("region",), f"`s3.region` {VALUE} is not a region name: write it as eu-west-1",
                                self.region)
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise KeyValueError(("endpoint_url",), f"`s3.endpoint_url` {VALUE} is not an http(s) URL with a "
                                    "host: write it as https://s3.example.net:9000", self.endpoint_url)


class S3Error(Exception):
    """An object could not be read."""


class S3Unavailable(S3Error):
    """S3 could not be reached or refused for a reason that may pass (down, 5xx, timeout, access denied):
    the provider should send the notification again later."""


class S3NoSuchKey(S3Error):
    """The bucket holds no such object: reading it again cannot succeed."""


class S3TooLarge(S3Error):
    """The object is over `max_bytes`."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class S3Object:
    """An object's bytes, and the turns its read took, kept until `release`."""

    def __init__(self, data: bytes, release: Callable[[], None] = lambda: None) -> None:
        self.data = data
        self.release = release
        """Give the turns back (once: later calls do nothing)."""


class _Turns:
    """The turns one read took, of one or more semaphores, given back together, once."""

    def __init__(self) -> None:
        self._taken: list[asyncio.Semaphore] = []

    async def take(self, turns: asyncio.Semaphore) -> None:
        await turns.acquire()
        self._taken.append(turns)

    def holds(self, turns: asyncio.Semaphore) -> bool:
        return turns in self._taken

    def release(self) -> None:
        while self._taken:
            self._taken.pop().release()


def available() -> bool:
    """Whether the `ses-s3` extra is installed."""
    return importlib.util.find_spec("aiobotocore") is not None


def _client_args(config: S3Config, region: str | None) -> dict[str, Any]:
    from aiobotocore.config import AioConfig  # noqa: PLC0415 - the optional extra is loaded at first use, not by every start

    timeout = parse_duration(config.timeout)
    return {
        "endpoint_url": config.endpoint_url,
        "region_name": region,
        # Each attempt's waits stay within the whole read's timeout; two attempts ride out one dropped connection.
        "config": AioConfig(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 2,
                                                                                   "mode": "standard"}),
    }


@functools.cache
def _warm_loader() -> Any:
    """Make and close a client on a private loop: reading the SDK's service models and endpoint rules takes a
    fifth of a second of CPU. Returns the loader, whose caches then serve every client of the process."""
    from aiobotocore.session import get_session  # noqa: PLC0415 - the optional extra is loaded at first use, not by every start

    session = get_session()

    async def make() -> None:
        async with session.create_client("s3", region_name="us-east-1", aws_access_key_id="warm-up",
                                         aws_secret_access_key="warm-up"):  # noqa: S106 - no request is sent
            pass

    asyncio.run(make())
    return session.get_component("data_loader")


def _prepared_session(config: S3Config, default_region: str | None) -> tuple[Any, dict[str, Any]]:
    """A session whose loader is warm, and the client's arguments, made in a thread: importing the SDK, making
    a session (it inspects each of its hundreds of event handlers), the first client's models and reading the
    shared config file for a region are CPU and file reads the event loop must not spend."""
    from aiobotocore.session import get_session  # noqa: PLC0415 - as above

    loader = _warm_loader()
    session = get_session()
    session.register_component("data_loader", loader)
    region = config.region or session.get_config_variable("region") or default_region
    return session, _client_args(config, region)


class S3Client:
    """One long-lived S3 client per source, made at first use; `close` at shutdown."""

    def __init__(self, config: S3Config, default_region: str | None = None, max_reads: int = MAX_READS,
                 max_large: int = MAX_LARGE) -> None:
        self.config = config
        self.default_region = default_region
        self.timeout_s = parse_duration(config.timeout)
        self._client: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._turns = asyncio.Semaphore(max_reads)
        self._large = asyncio.Semaphore(max_large)

    async def open(self) -> None:
        """Make the client now (the app's start) rather than at the first read: making one holds the event loop
        for tens of milliseconds of the SDK's own setup, even with its models loaded in a thread."""
        await self._session_client()

    async def _session_client(self) -> Any:
        async with self._lock:
            if self._client is None:
                session, args = await asyncio.to_thread(_prepared_session, self.config, self.default_region)
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(session.create_client("s3", **args))
                self._exit = stack
            return self._client

    async def get(self, bucket: str, key: str) -> S3Object:
        """The object's bytes, holding its turns (one of `max_reads`, and for a large object one of `max_large`,
        taken once its length is known, before its body is read) until the caller's `release`; given back here
        when the read fails. Raises S3NoSuchKey, S3TooLarge, or S3Unavailable for anything else."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - the optional extra is loaded at first use, not by every start

        where = f"s3://{bucket}/{key}"
        turns = _Turns()
        try:
            try:
                client = await self._session_client()  # once per process, and not S3's time: outside the timeout
                async with asyncio.timeout(self.timeout_s):  # a read waiting for its turns counts the wait
                    await turns.take(self._turns)
                    answer = await client.get_object(Bucket=bucket, Key=key)
                    async with answer["Body"] as stream:
                        length, cap = answer.get("ContentLength"), self.config.max_bytes
                        if isinstance(length, int) and length > cap:  # refused unread, without waiting for a turn
                            raise S3TooLarge(f"{where} is {length} bytes, over the source's s3.max_bytes of {cap}",
                                             length)
                        if not isinstance(length, int) or length > LARGE_BYTES:
                            await turns.take(self._large)
                        data = await self._read(stream, where)
                    if len(data) > LARGE_BYTES and not turns.holds(self._large):  # longer than it said
                        await turns.take(self._large)
                return S3Object(data, turns.release)
            except BaseException:
                turns.release()
                raise
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchKey":
                raise S3NoSuchKey(f"{where} does not exist (S3 answered {status} NoSuchKey)") from None
            raise S3Unavailable(f"S3 answered {status} {code or 'without an error code'} for {where}: "
                                f"{error.get('Message', '')}".rstrip(": ")) from None
        except TimeoutError:
            raise S3Unavailable(f"{where} was not read within {self.config.timeout}") from None
        except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
            # no credentials, connection refused or reset, a bad endpoint, a body cut off mid-read
            raise S3Unavailable(f"{where} could not be read: {type(exc).__name__}: {exc}") from None

    async def _read(self, stream: Any, where: str) -> bytes:
        cap = self.config.max_bytes
        # Each chunk goes into one buffer, which becomes the result without a copy: a join of a large object's
        # chunks was one callback copying all of it on the loop.
        buffer = io.BytesIO()
        while chunk := await stream.read(CHUNK_BYTES):
            if buffer.tell() + len(chunk) > cap:  # a length the server did not state, or stated wrong
                raise S3TooLarge(f"{where} is over the source's s3.max_bytes of {cap}", buffer.tell() + len(chunk))
            buffer.write(chunk)
            del chunk  # not held while the next one is read
        return buffer.getvalue()

    async def close(self) -> None:
        async with self._lock:
            if self._exit is not None:
                await self._exit.aclose()
            self._client, self._exit = None, None
