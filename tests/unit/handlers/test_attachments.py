"""handlers/attachments.py: content on disk addressed by sha256, the size cap, and base64 content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bridge.errors import Rejected
from handlers.attachments import (
    attachment,
    content_path,
    decode_base64,
    media_type,
    remote_attachment,
    save_attachments,
)


def test_attachment_metadata_is_computed_from_content() -> None:
    """Name, lower-cased content type, size and sha256 come from the part; a missing type is octet-stream."""
    item = attachment("Report.PDF", "Application/PDF", b"%PDF-1.7")
    assert item.meta == {"name": "Report.PDF", "content_type": "application/pdf", "size": 8,
                         "sha256": hashlib.sha256(b"%PDF-1.7").hexdigest()}
    assert attachment(None, None, b"").meta["content_type"] == "application/octet-stream"


def test_saved_content_is_addressed_by_its_digest(tmp_path: Path) -> None:
    """Content is written once under dir/ab/abcd…, and the metadata says it is stored."""
    one, same = attachment("a.txt", "text/plain", b"hello"), attachment("b.txt", "text/plain", b"hello")
    save_attachments([one, same], tmp_path, 100)
    target = content_path(tmp_path, one.meta["sha256"])
    assert target.read_bytes() == b"hello"
    assert target.parent.name == one.meta["sha256"][:2]
    assert one.meta["stored"] is True and same.meta["stored"] is True
    assert [p.name for p in target.parent.iterdir()] == [one.meta["sha256"]]  # no temporary files left


def test_content_over_the_cap_is_recorded_not_dropped(tmp_path: Path) -> None:
    """A part over max_bytes keeps its metadata with stored false and the reason, and is not written."""
    big = attachment("big.bin", None, b"x" * 11)
    save_attachments([big], tmp_path, 10)
    assert big.meta["stored"] is False
    assert big.meta["reason"] == "11 bytes is over the attachment cap of 10 bytes"
    assert not any(tmp_path.iterdir())


def test_remote_attachment_is_recorded_as_not_stored(tmp_path: Path) -> None:
    """A file the provider only links to is listed with stored false and why."""
    link = remote_attachment("x.pdf", "application/pdf", 5, "held by the provider", url="https://x/y.pdf")
    save_attachments([link], tmp_path, 10)
    assert link.meta == {"name": "x.pdf", "content_type": "application/pdf", "size": 5, "sha256": None,
                         "stored": False, "reason": "held by the provider", "url": "https://x/y.pdf"}


def test_disk_failure_raises(tmp_path: Path) -> None:
    """When the folder cannot be written, OSError reaches the caller (intake answers 503)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        save_attachments([attachment("a", None, b"abc")], blocker, 100)


def test_decode_base64_accepts_line_breaks() -> None:
    """Base64 content folded over lines decodes."""
    assert decode_base64("aGVs\r\nbG8=", "x") == b"hello"


@pytest.mark.parametrize("value", ["not base64!", 42, None])
def test_decode_base64_rejects_bad_content(value: object) -> None:
    """Content that is not a base64 string is a 400 naming the field."""
    with pytest.raises(Rejected) as info:
        decode_base64(value, "`Attachments[0].Content`")
    assert info.value.status == 400
    assert "`Attachments[0].Content`" in str(info.value)


def test_content_named_again_has_its_time_brought_up(tmp_path: Path) -> None:
    """A file already stored is not written again, but its modification time moves up to the new event's."""
    item = attachment("a.txt", "text/plain", b"hello")
    save_attachments([item], tmp_path, 100)
    target = content_path(tmp_path, item.meta["sha256"])
    os.utime(target, (1_000_000, 1_000_000))
    save_attachments([attachment("b.txt", "text/plain", b"hello")], tmp_path, 100)
    assert target.stat().st_mtime > 1_000_000
    assert target.read_bytes() == b"hello"


@pytest.mark.parametrize(("value", "expected"), [
    ('message/rfc822; charset="us-ascii"', ("message/rfc822", "us-ascii")),
    ("Text/HTML; Charset=UTF-8; format=flowed", ("text/html", "utf-8")),
    ("image/png", ("image/png", None)),
    ("not a type", ("application/octet-stream", None)),
    ("", ("application/octet-stream", None)),
    (None, ("application/octet-stream", None)),
    (42, ("application/octet-stream", None)),
])
def test_media_type_is_bare_with_the_charset_apart(value: object, expected: tuple[str, str | None]) -> None:
    """A Content-Type value gives the bare lower-cased media type and its charset; anything else is octet-stream."""
    assert media_type(value) == expected


def test_attachment_records_charset_and_inline_only_when_known() -> None:
    """`charset` appears when the type names one, `inline` when the caller knows it."""
    assert attachment("a", "text/plain; charset=utf-8", b"x", inline=False).meta == {
        "name": "a", "content_type": "text/plain", "charset": "utf-8", "inline": False, "size": 1,
        "sha256": hashlib.sha256(b"x").hexdigest()}
    assert "inline" not in attachment("a", "text/plain", b"x").meta
