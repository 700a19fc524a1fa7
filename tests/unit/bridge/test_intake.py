"""bridge/intake.py: which requests are verified and parsed off the loop."""

from __future__ import annotations

import hashlib
import threading
from typing import ClassVar, cast

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request
from structlog.testing import capture_logs

from bridge import offload
from bridge.config import ServerConfig, SourceConfig
from bridge.intake import OFFLOAD_BYTES, OFFLOAD_MIME_LINES, offloaded, run_handler
from bridge.runtime import Runtime, Source
from handlers.base import Handler, Inbound, Intercepted


def test_small_ordinary_bodies_stay_on_the_loop() -> None:
    """A form post, a JSON webhook or a short mail costs less to parse than a thread hand-off."""
    assert not offloaded(b"name=Asha&email=asha%40example.com")
    assert not offloaded(b'{"text": "' + b"x" * (OFFLOAD_BYTES - 20) + b'"}')
    assert not offloaded(b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n")


def test_large_bodies_and_many_mime_parts_go_to_the_parser_thread() -> None:
    """Over 64 KiB, or with many MIME delimiter lines (raw, or escaped in a JSON string), is parsed in a thread."""
    assert offloaded(b"x" * (OFFLOAD_BYTES + 1))
    assert offloaded(b"\r\n--b\r\nv" * (OFFLOAD_MIME_LINES + 1))
    assert offloaded(b'{"content": "' + b"\\r\\n--b\\r\\nv" * (OFFLOAD_MIME_LINES + 1) + b'"}')


@pytest.mark.parametrize("newline", [b"%0D%0A", b"%0d%0a", b"%0A"])
def test_many_mime_parts_url_encoded_in_a_form_go_to_the_parser_thread(newline: bytes) -> None:
    """Mailgun's urlencoded `body-mime` sends the message's line breaks as %0D%0A: its delimiter lines count."""
    assert offloaded(b"body-mime=" + (newline + b"--b" + newline + b"v") * (OFFLOAD_MIME_LINES + 1))
    assert not offloaded(b"body-mime=" + (newline + b"--b" + newline + b"v") * OFFLOAD_MIME_LINES)


class Recording(Handler):
    """A handler that notes the thread each step runs on."""

    kind: ClassVar[str] = "recording"
    channel = "webhook"
    Options: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self) -> None:
        super().__init__("src", SourceConfig(kind="recording"), ServerConfig())
        self.threads: list[str] = []

    def verify(self, request: Request, body: bytes) -> None:
        self.threads.append(threading.current_thread().name)

    def parse(self, request: Request, body: bytes) -> list[Inbound]:
        self.threads.append(threading.current_thread().name)
        return [Inbound(payload={"size": len(body)})]


@pytest.mark.parametrize("off", [False, True], ids=["on_loop", "off_loop"])
async def test_verify_and_parse_run_where_the_request_is_placed(off: bool) -> None:
    """Verify and parse both run in the parser thread when the request is `off` the loop (the body's
    `offloaded`, looked at once per request by the caller), both on the loop otherwise."""
    handler = Recording()
    request = make_mocked_request("POST", "/hooks/src")
    handled = await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"name=Asha",
                                off=off)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].payload == {"size": 9}
    assert [name.startswith("ticketbridge-parse") for name in handler.threads] == [off] * 2


def test_a_long_dedup_key_is_kept_as_its_digest() -> None:
    """Past MAX_DEDUP_KEY_CHARS the SHA-256 of the key, the same for the same key, different for another
    (PostgreSQL indexes at most 2,704 bytes of a row)."""
    from bridge.intake import MAX_DEDUP_KEY_CHARS, _indexable

    assert _indexable("msg-\x00-1") == "msg-\x00-1"  # the store writes a NUL out
    assert _indexable("k" * MAX_DEDUP_KEY_CHARS) == "k" * MAX_DEDUP_KEY_CHARS
    long = "k" * (MAX_DEDUP_KEY_CHARS + 1)
    assert _indexable(long) == "sha256:" + hashlib.sha256(long.encode()).hexdigest() == _indexable(long)
    assert _indexable(long + "\udcff") != _indexable(long)  # a lone surrogate is hashed, not refused


class Costly(Recording):
    """A handler whose parse meets work too costly for the loop (as a long address list the fast path cannot
    read does), charged before any of it is done."""

    def parse(self, request: Request, body: bytes) -> list[Inbound]:
        self.threads.append(threading.current_thread().name)
        offload.spend_on_loop(offload.LOOP_ADDRESS_CHARS + 1, "the From field is read by the full address parser")
        return [Inbound(payload={"size": len(body)})]


async def test_a_parse_that_meets_costly_work_on_the_loop_is_run_again_in_the_parser_thread() -> None:
    """A request its body placed on the loop whose parse finds work too costly there (OffLoop) is parsed
    again, from the start, in the parser thread, and handled as any other; one line says so."""
    handler = Costly()
    request = make_mocked_request("POST", "/hooks/src")
    with capture_logs() as logs:
        handled = await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"name=Asha",
                                    off=False)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].payload == {"size": 9}
    assert [name.startswith("ticketbridge-parse") for name in handler.threads] == [False, False, True]
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("intake.parse_offloaded", "the From field is read by the full address parser")]
