"""Attachment files on their way to a vendor: reading within caps, naming what is left out, multipart bodies."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.config import DestinationAttachments
from bridge.errors import MappingError
from bridge.vendors.files import (
    FileSet,
    Part,
    as_metas,
    attachment_list,
    human_size,
    load_files,
    multipart_body,
    multipart_preview,
    parse_multipart,
    read_files,
)
from handlers.attachments import attachment, save_attachments


def stored(folder: Path, name: str, content: bytes, content_type: str = "application/pdf") -> dict[str, Any]:
    """An attachment saved as intake saves it; its metadata as the payload carries it."""
    item = attachment(name, content_type, content)
    save_attachments([item], folder, 10_000_000)
    return item.meta


def caps(**kwargs: Any) -> DestinationAttachments:
    return DestinationAttachments(**kwargs)


def test_files_are_read_in_order_with_their_metadata(tmp_path: Path) -> None:
    """Stored files are read by sha256 in the payload's order, keeping name, content type and size."""
    metas = [stored(tmp_path, "a.pdf", b"%PDF-1"), stored(tmp_path, "b.png", b"\x89PNG", "image/png")]
    out = load_files(metas, tmp_path, caps())
    assert [(f.name, f.content_type, f.size, f.content) for f in out.files] == [
        ("a.pdf", "application/pdf", 6, b"%PDF-1"), ("b.png", "image/png", 4, b"\x89PNG")]
    assert (out.left_out, out.note()) == ([], "")


def test_a_file_over_the_count_cap_is_named_not_dropped(tmp_path: Path) -> None:
    """Past max_count, a file is not read but named with its size and the cap."""
    metas = [stored(tmp_path, f"{n}.txt", n.encode() * 3) for n in "abc"]
    out = load_files(metas, tmp_path, caps(max_count=2))
    assert [f.name for f in out.files] == ["a.txt", "b.txt"]
    assert out.note() == "Attachments not sent:\n- c.txt (3 B): over this destination's cap of 2 files"


def test_a_file_over_the_byte_cap_is_named_and_later_small_ones_still_go(tmp_path: Path) -> None:
    """A file that would pass max_bytes in all is named; a smaller one after it still fits and is sent."""
    metas = [stored(tmp_path, "a.bin", b"x" * 600), stored(tmp_path, "big.bin", b"y" * 600),
             stored(tmp_path, "c.bin", b"z" * 300)]
    out = load_files(metas, tmp_path, caps(max_bytes=1000))
    assert [f.name for f in out.files] == ["a.bin", "c.bin"]
    assert out.left_out == ["big.bin (600 B): over this destination's cap of 1000 bytes of files"]


def test_a_purged_file_is_named_never_a_crash(tmp_path: Path) -> None:
    """A file no longer on disk is named as purged; the others are sent."""
    gone = stored(tmp_path, "gone.pdf", b"old")
    kept = stored(tmp_path, "kept.pdf", b"new")
    (tmp_path / gone["sha256"][:2] / gone["sha256"]).unlink()
    out = load_files([gone, kept], tmp_path, caps())
    assert [f.name for f in out.files] == ["kept.pdf"]
    assert out.left_out == ["gone.pdf (3 B): no longer on disk (purged)"]


def test_files_never_stored_or_changed_or_without_a_folder_are_named(tmp_path: Path) -> None:
    """A file intake did not keep, one whose content no longer matches its digest, or no folder: each named."""
    meta = stored(tmp_path, "a.pdf", b"abc")
    (tmp_path / meta["sha256"][:2] / meta["sha256"]).write_bytes(b"tampered")
    remote = {"name": "link.jpg", "size": None, "sha256": None, "stored": False, "reason": "only a link was sent"}
    assert load_files([remote, meta], tmp_path, caps()).left_out == [
        "link.jpg (size unknown): not kept by the bridge (only a link was sent)",
        "a.pdf (3 B): the stored content does not match its sha256"]
    assert load_files([meta], None, caps()).left_out == ["a.pdf (3 B): no attachments folder is configured"]


async def test_read_files_replaces_the_field_with_the_loaded_set(tmp_path: Path) -> None:
    """read_files turns `files` into a loaded FileSet and leaves fields without `files` alone."""
    meta = stored(tmp_path, "a.pdf", b"abc")
    out = await read_files({"title": "t", "files": [meta]}, tmp_path, caps())
    assert isinstance(out["files"], FileSet) and out["files"].loaded and out["files"].files[0].content == b"abc"
    assert await read_files({"title": "t"}, tmp_path, caps()) == {"title": "t"}


def test_files_field_that_is_not_attachments_is_a_mapping_error() -> None:
    """A `files` field that is not a list of tables is refused, naming the field and the expected form."""
    with pytest.raises(MappingError, match="`files` must be the event's attachments") as info:
        as_metas("report.pdf")
    assert info.value.path == "files"


def test_attachment_list_names_each_file_with_its_size() -> None:
    """The filter writes one `- name (size)` line per attachment under a heading; nothing for none."""
    metas = [{"name": "router.jpg", "size": 12_600}, {"name": "", "size": 3 * 1024 * 1024}]
    assert attachment_list(metas) == "Attachments:\n- router.jpg (12.3 KB)\n- (unnamed) (3.0 MB)"
    assert attachment_list([]) == attachment_list(None) == ""
    with pytest.raises(TypeError):
        attachment_list("x")


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"),
                                            (5 * 1024**3, "5.0 GB"), (None, "size unknown")])
def test_human_size(size: Any, text: str) -> None:
    """Sizes are written in B, KB, MB or GB with one decimal."""
    assert human_size(size) == text


async def test_multipart_body_is_read_back_by_aiohttps_own_reader(aiohttp_client: Any) -> None:
    """A body built here is read by aiohttp's multipart reader with every name, filename, type and byte intact."""
    seen: list[tuple[Any, ...]] = []

    async def echo(request: web.Request) -> web.Response:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            seen.append((part.name, part.filename, part.headers.get("Content-Type"), await part.read(decode=True)))
        return web.Response()

    app = web.Application()
    app.router.add_post("/", echo)
    client = await aiohttp_client(app)
    content = bytes(range(256)) + b"\r\n--not-a-boundary\r\n"
    body, content_type = multipart_body([Part("ticketDTO", b'{"a": 1}'),
                                         Part("files", content, "r\u00e9seau \"v2\".bin", "application/octet-stream")])
    assert (await client.post("/", data=body, headers={"Content-Type": content_type})).status == 200
    assert seen == [("ticketDTO", None, None, b'{"a": 1}'),
                    ("files", "r\u00e9seau %22v2%22.bin", "application/octet-stream", content)]
    parsed = parse_multipart(body, content_type)
    assert [(p.name, p.filename, p.content) for p in parsed] == [("ticketDTO", None, b'{"a": 1}'),
                                                                  ("files", "r\u00e9seau %22v2%22.bin", content)]
    assert multipart_preview(body, content_type) == {
        "ticketDTO": {"a": 1}, "files": [{"filename": "r\u00e9seau %22v2%22.bin", "size": len(content)}]}
    assert hashlib.sha256(parsed[1].content).hexdigest() == hashlib.sha256(content).hexdigest()
