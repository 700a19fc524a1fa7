"""bridge/intake.py: which requests are verified and parsed off the loop."""

from __future__ import annotations

from bridge.intake import OFFLOAD_BYTES, OFFLOAD_MIME_LINES, offloaded


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
