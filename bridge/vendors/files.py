"""Attachment files on their way to a vendor.

A mapping hands an event's attachments to a destination through the reserved field `files` (e.g.
`files: {from: payload.attachments, on_missing: omit}`): a list of the metadata intake put in the payload
(`name`, `content_type`, `size`, `sha256`, `stored`). Vendors whose API takes files read the content from
the attachments folder (by sha256, off the event loop) within the destination's caps and send it as
multipart parts; every file that cannot go (over a cap, never stored, purged since) is named in the
ticket text instead. Vendors without a file endpoint list every file's name and size in the ticket text.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Undefined

from bridge.config import DestinationAttachments
from bridge.errors import MappingError
from bridge.mapping.base import describe as shown
from bridge.mapping.limits import check_time
from bridge.offload import FILES, in_parser
from handlers.attachments import content_path

FILES_FIELD = "files"
SHA256 = re.compile(r"[0-9a-f]{64}")
# A content type fit for a part header: type/subtype and plain parameters, nothing that could end the line.
CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:\s*;\s*[A-Za-z0-9_.-]+=[\w\".-]+)*")
OCTET_STREAM = "application/octet-stream"


def human_size(size: Any) -> str:
    """A byte count as people read it: `512 B`, `12.3 KB`, `4.0 MB`; `size unknown` when there is none."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "size unknown"
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MB"
    return f"{size / 1024**3:.1f} GB"


def describe(meta: Mapping[str, Any]) -> str:
    """One attachment as the ticket text names it: `router.jpg (12.3 KB)`."""
    name = meta.get("name")
    return f"{name if isinstance(name, str) and name.strip() else '(unnamed)'} ({human_size(meta.get('size'))})"


def as_metas(value: Any) -> list[dict[str, Any]]:
    """The `files` field as a list of attachment metadata; MappingError naming the field otherwise."""
    if value is None or value == "":
        return []
    if isinstance(value, FileSet):
        return value.metas
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MappingError(f"`files` must be the event's attachments (a list of tables with name, size and "
                           f"sha256, e.g. `files: {{from: payload.attachments}}`), got {shown(value)}",
                           path=FILES_FIELD)
    return value


def attachment_list(value: Any, heading: str = "Attachments:") -> Any:
    """The filter `attachment_list`: a list of attachments as text, one `- name (size)` line each under
    `heading`; empty text for no attachments."""
    if isinstance(value, Undefined):
        return value
    if value is None or value == []:
        return ""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError(f"attachment_list takes the event's attachments (a list of tables), got {shown(value)}")
    lines = [heading]
    for n, item in enumerate(value, 1):
        if not n % 64:
            check_time()  # the render's budget, and a loop slice
        lines.append(f"- {describe(item)}")
    return "\n".join(lines)


def with_text(text: Any, addition: str) -> Any:
    """`text` with `addition` appended as its own paragraph (text that is absent becomes the addition)."""
    if not addition:
        return text
    if text is None or (isinstance(text, str) and not text.strip()):
        return addition
    return f"{text}\n\n{addition}"


@dataclass(frozen=True)
class OutgoingFile:
    name: str
    content_type: str
    size: int
    sha256: str
    content: bytes


@dataclass
class FileSet:
    """The files one request carries (read from disk) and the lines naming those it cannot carry.
    `loaded` is false when nothing was read (a mapping test or `render` shows the body without files)."""

    metas: list[dict[str, Any]]
    files: list[OutgoingFile] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    loaded: bool = False

    def note(self) -> str:
        """The text naming the files that were not sent, and why; empty when all were sent."""
        if not self.left_out:
            return ""
        return "\n".join(["Attachments not sent:", *(f"- {line}" for line in self.left_out)])


def load_files(metas: list[dict[str, Any]], folder: Path | None, caps: DestinationAttachments) -> FileSet:
    """Read each attachment's content, in order, while it fits the caps. Never raises for a file: one that
    cannot be read (never stored, purged, changed, over a cap) is named in `left_out` with the reason."""
    out = FileSet(metas=metas, loaded=True)
    total = 0
    for meta in metas:
        label = describe(meta)
        digest = meta.get("sha256")
        if meta.get("stored") is False or not isinstance(digest, str) or not SHA256.fullmatch(digest):
            reason = meta.get("reason") if isinstance(meta.get("reason"), str) else "no content was received"
            out.left_out.append(f"{label}: not kept by the bridge ({reason})")
            continue
        if len(out.files) >= caps.max_count:
            count = f"{caps.max_count} file" + ("" if caps.max_count == 1 else "s")
            out.left_out.append(f"{label}: over this destination's cap of {count}")
            continue
        size = meta.get("size")
        if isinstance(size, int) and total + size > caps.max_bytes:
            out.left_out.append(f"{label}: over this destination's cap of {caps.max_bytes} bytes of files")
            continue
        if folder is None:
            out.left_out.append(f"{label}: no attachments folder is configured")
            continue
        try:
            content = content_path(folder, digest).read_bytes()
        except FileNotFoundError:
            out.left_out.append(f"{label}: no longer on disk (purged)")
            continue
        except OSError as exc:
            out.left_out.append(f"{label}: could not be read ({exc.strerror or type(exc).__name__})")
            continue
        if hashlib.sha256(content).hexdigest() != digest:
            out.left_out.append(f"{label}: the stored content does not match its sha256")
            continue
        if total + len(content) > caps.max_bytes:
            out.left_out.append(f"{label}: over this destination's cap of {caps.max_bytes} bytes of files")
            continue
        total += len(content)
        name = meta.get("name")
        ctype = meta.get("content_type")
        out.files.append(OutgoingFile(
            name=name if isinstance(name, str) and name.strip() else f"attachment-{len(out.files) + 1}",
            content_type=ctype if isinstance(ctype, str) and CONTENT_TYPE.fullmatch(ctype) else OCTET_STREAM,
            size=len(content), sha256=digest, content=content))
    return out


async def read_files(fields: dict[str, Any], folder: Path | None, caps: DestinationAttachments) -> dict[str, Any]:
    """`fields` with `files` turned into a loaded FileSet, the disk read off the event loop; unchanged
    when there is no `files` field."""
    if FILES_FIELD not in fields or (isinstance(fields[FILES_FIELD], FileSet) and fields[FILES_FIELD].loaded):
        return fields
    metas = as_metas(fields[FILES_FIELD])
    loaded = await in_parser(load_files, metas, folder, caps, pool=FILES) if metas else FileSet(metas=[], loaded=True)
    return {**fields, FILES_FIELD: loaded}


def split_files(fields: Mapping[str, Any]) -> tuple[dict[str, Any], FileSet | None]:
    """The fields without `files`, and the files (a FileSet; not loaded when `read_files` did not run)."""
    if FILES_FIELD not in fields:
        return dict(fields), None
    value = fields[FILES_FIELD]
    rest = {k: v for k, v in fields.items() if k != FILES_FIELD}
    return rest, value if isinstance(value, FileSet) else FileSet(metas=as_metas(value))


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str
    content: bytes
    filename: str | None = None
    content_type: str | None = None


def _quoted(text: str) -> str:
    # As browsers write form-data names: a quote and line breaks percent-encoded, so a name cannot end the header.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def multipart_body(parts: list[Part]) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) and its Content-Type header with a random boundary."""
    boundary = "ticketbridge-" + secrets.token_hex(16)
    out = bytearray()
    for part in parts:
        disposition = f'form-data; name="{_quoted(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quoted(part.filename)}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if part.content_type:
            out += f"Content-Type: {part.content_type}\r\n".encode()
        out += b"\r\n" + part.content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def file_parts(files: FileSet | None, name: str = FILES_FIELD) -> list[Part]:
    """One `files` part per file read."""
    return [Part(name=name, content=f.content, filename=f.name, content_type=f.content_type)
            for f in (files.files if files is not None else [])]


@dataclass(frozen=True)
class ReceivedPart:
    name: str
    filename: str | None
    content_type: str
    content: bytes


def parse_multipart(body: bytes, content_type: str) -> list[ReceivedPart]:
    """A multipart/form-data body's parts, in order (for simulators, previews and tests); ValueError when
    it is not one."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError(f"not multipart/form-data: {content_type!r}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise ValueError("the multipart body could not be read")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ValueError("a part has no form-data name")
        payload = part.get_payload(decode=True)
        parts.append(ReceivedPart(name=name, filename=part.get_filename(), content_type=part.get_content_type(),
                                  content=payload if isinstance(payload, bytes) else b""))
    return parts


def multipart_preview(body: bytes, content_type: str) -> dict[str, Any]:
    """A multipart body as JSON data, for mapping tests and `render`: each part by name, its JSON decoded
    (text kept as text), files as `{filename, size}` in a list."""
    out: dict[str, Any] = {}
    for part in parse_multipart(body, content_type):
        if part.filename is not None:
            out.setdefault(part.name, []).append({"filename": part.filename, "size": len(part.content)})
            continue
        try:
            out[part.name] = json.loads(part.content)
        except ValueError:
            out[part.name] = part.content.decode("utf-8", "replace")
    return out
